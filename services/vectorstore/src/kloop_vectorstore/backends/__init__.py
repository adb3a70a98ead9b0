"""Storage backends behind one interface (`base.VectorBackend`)."""
