"""glmv review: a person checks and corrects records in a local page; decisions flow back."""
