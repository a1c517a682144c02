//! Layers shared through a blob store, for servers and workers on other hosts: a layer built
//! or pulled here is also stored as `images/layers/<id>.tar.zst` (an OCI layer blob, whiteouts
//! translated) with its record `images/layers/<id>.json` (written last, so a record names a
//! complete blob), and a host whose image store lacks a layer fetches and unpacks it. The
//! unpacked layers under `DATA_DIR/images/layers/` stay each host's cache.
//!
//! Base layers are not shared as files: only their record goes to the bucket, and a host that
//! lacks one prepares it itself (as `ferry images prepare` does), the same everywhere for a
//! given Debian suite and Python series.

use ferry_blobs::Blobs;

use crate::error::{Error, Result};
use crate::export::OCI_ZSTD_LAYER;
use crate::registry::unpack_layer_reader;
use crate::store::{ImageStore, LayerId, LayerOrigin, LayerRecord};

fn tar_key(id: &LayerId) -> String {
    format!("images/layers/{id}.tar.zst")
}

fn record_key(id: &LayerId) -> String {
    format!("images/layers/{id}.json")
}

fn blob_error(context: String, e: ferry_blobs::BlobError) -> Error {
    Error::Io { context, source: e.into_io() }
}

impl ImageStore {
    /// Stores the layer and the layers under it (bases excepted) in `blobs`, each unless it
    /// is there already. Does nothing when `blobs` is the data dir itself.
    pub async fn publish(&self, blobs: &Blobs, id: &LayerId) -> Result<()> {
        if blobs.is_local() {
            return Ok(());
        }
        for record in self.chain(id)? {
            let rid = record.id.clone();
            let present = blobs.head(&record_key(&rid)).await.map_err(|e| blob_error(format!("looking up layer {rid}"), e))?;
            if present.is_some() {
                continue;
            }
            if matches!(record.origin, LayerOrigin::Base { .. }) {
                let json = serde_json::to_vec_pretty(&record).expect("layer records serialize");
                blobs.put_bytes(&record_key(&rid), json.into()).await.map_err(|e| blob_error(format!("storing layer {rid}"), e))?;
                continue;
            }
            let store = self.clone();
            let export_id = rid.clone();
            let (size, _) = blobs
                .put_from_writer(&tar_key(&rid), move |w| {
                    store.export_layer(&export_id, w).map_err(|e| std::io::Error::other(e.to_string()))
                })
                .await
                .map_err(|e| blob_error(format!("storing layer {rid} in {}", blobs.describe()), e))?;
            let json = serde_json::to_vec_pretty(&record).expect("layer records serialize");
            blobs.put_bytes(&record_key(&rid), json.into()).await.map_err(|e| blob_error(format!("storing layer {rid}"), e))?;
            tracing::info!(layer = %rid, bytes = size, "layer stored in {}", blobs.describe());
        }
        Ok(())
    }

    /// Makes the layer and the layers under it present in this image store, fetching those it
    /// lacks from `blobs`. A missing base is [`Error::LayerNotFound`] (prepare it on this host).
    pub async fn fetch(&self, blobs: &Blobs, id: &LayerId) -> Result<()> {
        let mut next = Some(id.clone());
        let mut missing = Vec::new();
        while let Some(id) = next.take() {
            if self.contains(&id) {
                break;
            }
            if blobs.is_local() || missing.len() > 500 {
                return Err(Error::LayerNotFound(id.to_string()));
            }
            let json = match blobs.read_all(&record_key(&id)).await {
                Ok(j) => j,
                Err(ferry_blobs::BlobError::NotFound(_)) => return Err(Error::LayerNotFound(id.to_string())),
                Err(e) => return Err(blob_error(format!("fetching layer {id}"), e)),
            };
            let record: LayerRecord = serde_json::from_slice(&json)
                .map_err(|e| Error::CorruptStore { path: record_key(&id).into(), reason: e.to_string() })?;
            next = record.parent.clone();
            missing.push(record);
        }
        // Parents first, so a layer is complete only once everything under it is.
        for record in missing.into_iter().rev() {
            let id = record.id.clone();
            if let LayerOrigin::Base { python_series, .. } = &record.origin {
                let (progress, _) = tokio::sync::mpsc::unbounded_channel();
                let data_dir = self.root().parent().map(|p| p.to_path_buf()).unwrap_or_default();
                crate::base::prepare_base(&data_dir, python_series, &progress).await?;
                if !self.contains(&id) {
                    return Err(Error::LayerNotFound(id.to_string()));
                }
                continue;
            }
            let staging = self.staging_dir("fetch")?;
            let fs = staging.join("fs");
            let unpacked = blobs
                .get_into_reader(&tar_key(&id), move |r| unpack_layer_reader(r, OCI_ZSTD_LAYER, &fs).map_err(|e| std::io::Error::other(e.to_string())))
                .await;
            if let Err(e) = unpacked {
                crate::store::remove_tree(&staging);
                return Err(blob_error(format!("fetching layer {id} from {}", blobs.describe()), e));
            }
            self.commit(&staging, &record)?;
            tracing::info!(layer = %id, "layer fetched from {}", blobs.describe());
        }
        Ok(())
    }
}
