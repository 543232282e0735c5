//! Compiles the API with protoc (Debian package `protobuf-compiler`), keeping the descriptor set
//! for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("hyperexport_descriptor.bin")).compile_protos(
        &["hyperexport/v1/export.proto", "hyperexport/v1/agent.proto", "hyperexport/v1/dr.proto", "hyperexport/v1/bandwidth.proto"],
        &["."],
    )?;
    Ok(())
}
