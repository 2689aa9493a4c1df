"""The browser view of a store: `circuitdb serve` (pages and their JSON API, read-only)."""
