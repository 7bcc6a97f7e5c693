from environments.serve import main

main()
