//! The integration tests, one binary (each test binary links Burn: one link instead of many).

mod common;
mod model_support;
mod score_support;

mod cli_commands;
mod cli_input_errors;
mod cuda_dp;
mod cuda_parity;
mod data_reference;
mod data_stage;
mod export_cli;
mod export_interop;
mod export_stage;
mod model_bf16;
mod model_golden;
mod model_lora;
mod model_weights;
mod runner_end_to_end;
mod score_adapter_import;
mod score_cli;
mod score_stage;
mod sweep_end_to_end;
mod train_bench;
mod train_dp;
mod train_loop;
mod train_parity;
mod train_stage;
