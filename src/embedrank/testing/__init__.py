"""Test support reached from the runtime at named points; inert unless a test switches it on."""
