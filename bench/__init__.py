"""The glmv benchmark (`make bench`): see README.md."""
