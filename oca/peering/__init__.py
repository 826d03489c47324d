"""Peering: appliances at a site share inventory summaries and serve each other's misses."""
