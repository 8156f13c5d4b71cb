"""Stand-in for the get-pip.py that ansible-test downloads from ci-files.testing.ansible.com to put pip into
the empty virtual environments of its sanity tests. That host is not reachable from every build machine;
this does the same with the standard library's ensurepip, then installs the requested pip version with pip
(from the package index pip is configured with). tests/sanity/run.sh puts it in ansible-test's cache only when
the real script is not there."""

import subprocess
import sys

# get-pip.py's own flags; pip install does not know them.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])
