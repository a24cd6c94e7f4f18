from xretrieve.cli import main

main()
