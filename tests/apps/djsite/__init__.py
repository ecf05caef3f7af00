"""A small Django project hosted by rtserve in the tests and the existing-apps guide."""
