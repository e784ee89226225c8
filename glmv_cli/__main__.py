from glmv_cli.cli import main

main()
