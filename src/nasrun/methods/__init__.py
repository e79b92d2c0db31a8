"""Search methods: how α is parameterised and relaxed, and how its gradient is formed."""
