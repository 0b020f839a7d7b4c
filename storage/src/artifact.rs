//! Single objects kept beside the offline store's tables, such as serialized models: written
//! whole and atomically, read whole.

use std::io::Write;
use std::path::{Path, PathBuf};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use crate::error::{StorageError, StorageResult};
use crate::location::StoreLocation;

/// Where an object at `relative` (a `/`-separated path) under `root` lives, as a URL.
pub fn object_url(root: &StoreLocation, relative: &str) -> String {
    match root {
        StoreLocation::Local(dir) => format!("file://{}", dir.join(relative).display()),
        StoreLocation::Remote { base, .. } => format!("{base}{relative}"),
    }
}

/// Writes an object whole: readers see the old object or the new one, never part of one, and it
/// is durable when this returns.
pub async fn write_object(
    root: &StoreLocation,
    relative: &str,
    bytes: Vec<u8>,
) -> StorageResult<()> {
    match root {
        StoreLocation::Local(dir) => {
            let path = dir.join(relative);
            tokio::task::spawn_blocking(move || write_local(&path, &bytes))
                .await
                .map_err(|e| StorageError::Internal(e.to_string()))?
        }
        StoreLocation::Remote { store, prefix, .. } => {
            store
                .put(&object_path(prefix, relative), PutPayload::from(bytes))
                .await?;
            Ok(())
        }
    }
}

fn write_local(path: &Path, bytes: &[u8]) -> StorageResult<()> {
    let dir = path
        .parent()
        .ok_or_else(|| StorageError::Internal(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
    let staged: PathBuf = path.with_extension("partial");
    let mut file = std::fs::File::create(&staged).map_err(|e| StorageError::io(&staged, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io(&staged, e))?;
    std::fs::rename(&staged, path).map_err(|e| StorageError::io(path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// Reads an object whole.
pub async fn read_object(root: &StoreLocation, relative: &str) -> StorageResult<Vec<u8>> {
    match root {
        StoreLocation::Local(dir) => {
            let path = dir.join(relative);
            tokio::fs::read(&path)
                .await
                .map_err(|e| StorageError::io(&path, e))
        }
        StoreLocation::Remote { store, prefix, .. } => {
            let object = store.get(&object_path(prefix, relative)).await?;
            Ok(object.bytes().await?.to_vec())
        }
    }
}

/// Deletes an object; one that is not there is not an error.
pub async fn delete_object(root: &StoreLocation, relative: &str) -> StorageResult<()> {
    match root {
        StoreLocation::Local(dir) => {
            let path = dir.join(relative);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StorageError::io(&path, e)),
            }
        }
        StoreLocation::Remote { store, prefix, .. } => {
            match store.delete(&object_path(prefix, relative)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// `relative` (a `/`-separated path) under `prefix`.
pub(crate) fn object_path(prefix: &ObjectPath, relative: &str) -> ObjectPath {
    prefix
        .parts()
        .chain(ObjectPath::from(relative).parts())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_object_is_read_back_replaced_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = StoreLocation::local(dir.path());
        write_object(&root, "models/p/m/1.json", b"one".to_vec())
            .await
            .unwrap();
        write_object(&root, "models/p/m/1.json", b"two".to_vec())
            .await
            .unwrap();
        assert_eq!(
            read_object(&root, "models/p/m/1.json").await.unwrap(),
            b"two"
        );
        assert!(!dir.path().join("models/p/m/1.partial").exists());
        delete_object(&root, "models/p/m/1.json").await.unwrap();
        delete_object(&root, "models/p/m/1.json").await.unwrap();
        assert!(read_object(&root, "models/p/m/1.json").await.is_err());
    }
}
