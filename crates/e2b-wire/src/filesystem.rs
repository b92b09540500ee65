//! `filesystem.Filesystem` messages in proto3-JSON form.

use crate::proto_enum;
use crate::proto_json::{self, is_default};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The fully qualified service name; RPC paths are `/filesystem.Filesystem/<Method>`.
pub const SERVICE: &str = "filesystem.Filesystem";

proto_enum! {
    /// `filesystem.FileType`.
    pub enum FileType {
        Unspecified = (0, "FILE_TYPE_UNSPECIFIED"),
        File = (1, "FILE_TYPE_FILE"),
        Directory = (2, "FILE_TYPE_DIRECTORY"),
        Symlink = (3, "FILE_TYPE_SYMLINK"),
    }
}

/// What envd reports about one file system entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "is_default")]
    pub file_type: FileType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// `int64`: a decimal string in JSON.
    #[serde(
        default,
        with = "proto_json::int64",
        skip_serializing_if = "is_default"
    )]
    pub size: i64,
    #[serde(
        default,
        with = "proto_json::uint32",
        skip_serializing_if = "is_default"
    )]
    pub mode: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub permissions: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// `google.protobuf.Timestamp`: an RFC 3339 string in JSON.
    #[serde(
        default,
        alias = "modified_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub modified_time: Option<String>,
    #[serde(
        default,
        alias = "symlink_target",
        skip_serializing_if = "Option::is_none"
    )]
    pub symlink_target: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, alias = "is_symlink", skip_serializing_if = "is_default")]
    pub is_symlink: bool,
}

/// A request naming one path (`Stat`, `MakeDir`, `Remove`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

pub type StatRequest = PathRequest;
pub type MakeDirRequest = PathRequest;
pub type RemoveRequest = PathRequest;

/// A response carrying one entry (`Stat`, `MakeDir`, `Move`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

pub type StatResponse = EntryResponse;
pub type MakeDirResponse = EntryResponse;
pub type MoveResponse = EntryResponse;

/// `ListDir` request body; depth 0 is treated as 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(
        default,
        with = "proto_json::uint32",
        skip_serializing_if = "is_default"
    )]
    pub depth: u32,
}

/// `ListDir` response body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirResponse {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<EntryInfo>,
}

/// `Remove` response body: `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveResponse {}

/// `Move` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
}

/// One element of the `POST /files` response array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteInfo {
    pub path: String,
    pub name: String,
    #[serde(rename = "type")]
    pub entry_type: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entry_info_writes_size_as_string_and_type_by_name() {
        let entry = EntryInfo {
            name: "a.txt".into(),
            file_type: FileType::File,
            path: "/home/user/a.txt".into(),
            size: 12,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "user".into(),
            group: "user".into(),
            modified_time: Some("2024-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let value = serde_json::to_value(&entry).unwrap();
        assert_eq!(value["size"], json!("12"));
        assert_eq!(value["type"], json!("FILE_TYPE_FILE"));
        assert_eq!(value["modifiedTime"], json!("2024-01-01T00:00:00Z"));
        assert!(value.get("isSymlink").is_none());
        let back: EntryInfo = serde_json::from_value(value).unwrap();
        assert_eq!(back, entry);
    }

    #[test]
    fn entry_info_reads_numbers_and_snake_case() {
        let entry: EntryInfo = serde_json::from_value(json!({
            "name": "d", "type": 2, "size": 4096, "symlink_target": "/x", "is_symlink": true
        }))
        .unwrap();
        assert_eq!(entry.file_type, FileType::Directory);
        assert_eq!(entry.size, 4096);
        assert_eq!(entry.symlink_target.as_deref(), Some("/x"));
        assert!(entry.is_symlink);
    }

    #[test]
    fn list_dir_depth_accepts_string() {
        let req: ListDirRequest =
            serde_json::from_value(json!({"path": "/tmp", "depth": "2"})).unwrap();
        assert_eq!(req.depth, 2);
    }
}
