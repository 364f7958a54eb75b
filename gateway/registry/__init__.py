"""The thin cloud registry: node join and identity (its own CA), desired resources per node, node status."""
