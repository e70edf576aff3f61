from clouddetect.cli import main

main()
