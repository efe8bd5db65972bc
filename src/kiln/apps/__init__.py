"""Applications built from Kiln's stages: the customer-service assistant and sentiment monitoring."""
