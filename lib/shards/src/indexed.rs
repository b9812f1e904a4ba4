//! Megatron indexed dataset (MMIDIDX): see FORMATS.md section 1.
