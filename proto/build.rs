//! Generates the gRPC client and server for `capfilt/v1/capfilt.proto` with tonic + prost, using
//! the protoc binary vendored by `protoc-bin-vendored` (no system protobuf-compiler needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["capfilt/v1/capfilt.proto"], &["."])?;
    println!("cargo:rerun-if-changed=capfilt/v1/capfilt.proto");
    Ok(())
}
