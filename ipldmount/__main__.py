import sys

from ipldmount.adapters.cli import main

sys.exit(main())
