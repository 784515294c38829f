"""Container networks: bridges, veth pairs, addresses, names (DNS), published ports and egress.

    model.py     records: Network, Attachment, PortMapping; the rules for names and subnets
    options.py   the create options (networks, aliases, ip, ports) and CreateNetwork's
    config.py    the agent's [network] settings (/etc/quilt/quilt.conf)
    ipam.py      which address each container has on each network (in memory; the store keeps it)
    netns.py     network namespaces from a thread: unshare, setns, the /run/netns bind mounts
    bridge.py    the kernel side (pyroute2, in one worker thread): bridges, veths, addresses, sysctls
    firewall.py  the table `inet quilt` (nftables JSON through `nft -j -f -`)
    dns.py       the name server on each network's gateway, in the agent's event loop
    files.py     each container's /etc/resolv.conf, /etc/hosts, /etc/hostname
    core.py      Networks: what the manager calls; ties the above together
"""
