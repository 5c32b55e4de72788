"""Built-in amortized defenders: trained networks that protect in one forward pass (RID, GAP-Diff)."""
