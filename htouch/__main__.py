from htouch.cli import main

main()
