"""The spec's script example: a bash Hello World as a KottaJob.

Needs: a running service (`dask-kotta up` in the repository root writes ../auth.file).
Run:   cd examples && python hello_script.py      Prints: True, completed, Hello World!
"""

from kotta import Kotta, KottaJob
from kotta.kotta_functions import *

konn = Kotta(open('../auth.file').read())

hello = KottaJob( jobtype       = 'script',
                  jobname       = 'hello',
                  executable    = '/bin/bash myscript.sh',
                  script_name   = 'myscript.sh',
                  script        = '#!/bin/bash \n echo "Hello World!"'
                )

print(hello.submit(konn))
hello.wait(konn)
print(hello.status(konn))

# STDOUT.txt and STDERR.txt are outputs like any other.
for out in hello.outputs:
    if out.file == 'STDOUT.txt':
        print(out.read(), end='')
