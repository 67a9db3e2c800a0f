"""Worker processes: a node on every core (``[node] workers = N | "auto"``).

The node process keeps the mesh, the DB store writer and its replication, certs, the
CDN cache, the webhooks queue and the admin listener; N worker processes serve the
public listeners: HTTP/HTTPS, DNS over UDP and TCP, and the MongoDB endpoint's accepts
(sockets.py makes their sockets and hands MongoDB connections to the node process,
supervisor.py runs the workers, worker.py is one). They talk over one Unix socket pair per worker, length-prefixed msgpack
frames (ipc.py), with these messages:

node -> worker
    hello      {index, config (pickled Config), forward_to "host:port", forwarded_routes,
                members: the member map, txt: {name: [values]} the zone's run-time TXT records}
    member     {m}: a member of the map changed (the mesh): the DNS answers follow it
    txt        {name, values}: a run-time TXT record set (no values: withdrawn)
    event      {ev: {tenant, channel, origin, seq, data}}: a pub/sub event, in the
               node's order (the history of the node first, to a new worker)
    published  {ref, ids}: the answer to a publish, after its events
    count      {ref, keys}: "your subscribers on these channels?" (for /api/presence)
    counted    {ref, counts}: the answer to a worker's count, summed over all workers
    scrape     {ref}: "your metrics now" (for /metrics)
    drain      a restart: the next process's workers serve the listening sockets now
               (farts/release/handover.py); stop accepting, finish what is open
    reconnect  {spread}: the next process serves: ask every subscriber to reconnect
    stop       drain and exit
worker -> node
    ready      {pid}: listening
    publish    {ref, tenant, messages: [[channel, data JSON], ...]}
    count      {ref, keys}: the subscribers on these channels on every worker
    counted    {ref, counts}: this worker's answer to the node's count
    open       {n}: its open client connections, when they changed (every OPEN_INTERVAL)
    metrics    {snapshot, open, slow, ref?}: every metrics.PUSH_INTERVAL, on exit, and as
               the answer to a scrape; slow: the slow requests logged since the last one
"""
