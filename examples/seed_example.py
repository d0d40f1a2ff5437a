"""The project's seed flow, with zklb: a kazoo client, a balancer, servers, a strategy, a pick.

Needs a ZooKeeper at localhost:2181 (or set ZKLB_HOSTS); `bash scripts/demo.sh` starts one for you.
"""

import os

from kazoo.client import KazooClient as ZooKeeper

from zklb import LoadBalancer

zk = ZooKeeper(os.environ.get("ZKLB_HOSTS", "localhost:2181"))
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
