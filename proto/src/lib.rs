//! The HyperExport gRPC API, generated from `proto/hyperexport/v1/*.proto`.

/// Package `hyperexport.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("hyperexport.v1");

    /// The encoded descriptor set of the package, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hyperexport_descriptor");
}
