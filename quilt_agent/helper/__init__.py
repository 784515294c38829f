"""Everything that runs in forked processes: the fork server, the per-container
monitor and the container's init until it execs the command.

One module per kernel concern, as in youki and crun: namespaces, rootfs,
process (user, capabilities, exec); protocol holds the typed messages between
the agent and a monitor.
"""
