"""The spec's second example: @kottajob with block=False returns a job future.

Needs: a running service (`dask-kotta up` in the repository root writes ../auth.file).
Run:   cd examples && python my_sum_nonblocking.py
Prints: <KottaJob 'my_sum' id=... status=pending>, then "Status :  completed", "Result :  4950"
"""

from kotta import Kotta, KottaJob
from kotta.kotta_functions import *

konn = Kotta(open('../auth.file').read())


@kottajob(konn, 'Test', 5, block=False)
def my_sum(items):
    # Here, my_sum sleeps for 5 secs, and does not return immediately
    import time
    time.sleep(5)
    return sum(items)

job_hndl = my_sum (range(0,100))
print(job_hndl)

# Wait a few seconds and then
job_hndl.wait(konn)
status = job_hndl.status(konn)
print("Status : ", status)
# Prints:  Status :  completed

result = job_hndl.get_results(konn)
print("Result : ", result)
# Prints:  Result :  4950
