"""The project's seed flow, with zklb: a kazoo client, a balancer, servers, a strategy, a pick.

Uses the ZooKeeper named by ZKLB_HOSTS (e.g. localhost:2181); without it, starts a throwaway local one.
"""

import os

from kazoo.client import KazooClient as ZooKeeper

from zklb import LoadBalancer
from zklb.testing import ZooKeeperEnsemble

local = None if "ZKLB_HOSTS" in os.environ else ZooKeeperEnsemble(size=1).start()
hosts = local.hosts if local else os.environ["ZKLB_HOSTS"]

# The seed, nearly line for line:
zk = ZooKeeper(hosts)
zk.start()

lb = LoadBalancer(zk)  # service "default" under /services; the kazoo client stays the caller's
lb.add_server("http://10.0.0.1:8080")
lb.add_server("http://10.0.0.2:8080")
lb.add_server("http://10.0.0.3:8080")

lb.set_strategy("round_robin")
for _ in range(6):
    print(lb.get_server())

lb.close()  # removes the three registrations
zk.stop()
zk.close()
if local:
    local.close()
