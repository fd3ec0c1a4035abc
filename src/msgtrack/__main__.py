from msgtrack.cli import main

main()
