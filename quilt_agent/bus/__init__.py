"""The D-Bus layer: the only package that imports dbus-fast's service API.

It unpacks arguments, checks authorization, calls the manager and maps errors
to D-Bus names. Nothing outside this package imports it.
"""
