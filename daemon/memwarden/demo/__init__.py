"""`make demo` (python -m memwarden.demo): a tour of memwarden on a simulated host, no GPU, no network.

The real memwardend, the real memwardenctl and the Ollama simulator (memwarden.sim.ollama) run as separate
processes over loopback in a temporary directory; every command is printed before it runs so it can be repeated
by hand. stack.py starts and stops the processes, steps.py and learning.py are the tour, console.py prints it.
"""
