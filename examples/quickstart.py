"""The README quickstart as a script: `make demo` runs it."""

from loadbalancer import LoadBalancer, NoServersAvailableError, RandomStrategy

lb = LoadBalancer()  # round-robin, up to 10 servers
for server in ("10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"):
    lb.register(server)

print("round-robin:", [lb.get() for _ in range(4)])

lb.unregister("10.0.0.2:8080")
print("after unregister:", [lb.get() for _ in range(4)])

shuffled = LoadBalancer(strategy=RandomStrategy())
shuffled.replace(["a", "b", "c"])
print("random:", [shuffled.get() for _ in range(6)])

try:
    LoadBalancer().get()
except NoServersAvailableError as error:
    print("empty pool:", error)
