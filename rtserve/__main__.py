from rtserve.cli.main import main

main()
