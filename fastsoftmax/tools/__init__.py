"""The command line and what only it uses: ``fastsoftmax bench`` and ``fastsoftmax check``.

Apart from the library: nothing in ``fastsoftmax`` imports this package, and
it uses the library only through its public API (plus ``fastsoftmax._jit``'s
compile flags and ``fastsoftmax._threading.active_layer``).  Modules:
``cli`` (argument parsing and the console output), ``bench`` (timing and the
machine's floor), ``peers`` (other libraries' loss and gradient), ``check``
(the self-check), ``problems`` (the random problems of the tests, the
check and the benchmarks) and ``memory`` (a call's peak extra memory, for the
benchmarks' and tests' child processes).
"""
