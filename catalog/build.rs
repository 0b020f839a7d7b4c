//! Generates the Raft transport's gRPC service from proto/raft.proto (needs protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raft.proto");
    tonic_prost_build::compile_protos("proto/raft.proto")?;
    Ok(())
}
