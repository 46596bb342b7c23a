"""Framework adapters behind one protocol: plain, crewai, autogen, langgraph (see registry.get_adapter)."""
