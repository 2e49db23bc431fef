"""The spec's first example: a blocking @kottajob.

Needs: a running service (`dask-kotta up` in the repository root writes ../auth.file).
Run:   cd examples && python my_sum.py      Prints: 4950
"""

# Import the Kotta module
from kotta import Kotta, KottaJob
from kotta.kotta_functions import *

# Create a Kotta Connection using Login with Amazon credentials
# The token from Kotta is stored in the auth.file
konn = Kotta(open('../auth.file').read())


@kottajob(konn, 'Test', 5)
def my_sum(items):
     return sum(items)

result = my_sum (range(0,100))
print(result)
