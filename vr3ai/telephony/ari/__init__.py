"""Asterisk ARI provider: REST client, events WebSocket listener, per-call state machine, reconcile."""
