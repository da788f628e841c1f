"""mlxstore: page-aligned tensor stores and SSD streaming of MoE experts for MLX."""
