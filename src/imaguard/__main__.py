from imaguard.cli import main

main()
