"""The pool's state and policy, free of I/O, threads and clocks."""
