//! What a scoped token may call: the table of RPCs that change nothing, and the request fields
//! that name an environment or an environment-bound object.
//!
//! Requests are inspected from the protocol's descriptors, by field name, so the one check
//! covers all methods: `environment_name` names an environment, `object_creation_type` left at
//! 0 makes a `*GetOrCreate` a lookup, and top-level string fields ending in `_id` name apps,
//! functions, classes, sandboxes and named objects whose environment the store knows.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost::Message;

/// RPCs that read and change nothing: the only ones a read-only token may call. Every RPC not
/// listed here writes (the safe default for RPCs added later), except `*GetOrCreate` lookups.
/// `QueueGet` is not here: it removes the items it returns.
pub const READ_ONLY_RPCS: &[&str] = &[
    "AppCountLogs", "AppDeploymentHistory", "AppFetchLogs", "AppGetByDeploymentName", "AppGetInfo",
    "AppGetLayout", "AppGetLifecycle", "AppGetLogs", "AppGetObjects", "AppGetTags", "AppGetTimeRangeStats",
    "AppList", "AppLookup", "AuditLogCount", "AuditLogList", "BlobGet", "ClassGet", "CliCommandSuggest",
    "ClientHello", "ClusterGet", "ClusterList", "ClusterReservationList", "DictContains", "DictContents",
    "DictGet", "DictGetById", "DictLen", "DictList", "DomainList", "EndpointGetByName", "EndpointGetInfo",
    "EndpointGetLibrary", "EndpointGetLifecycle", "EndpointList", "EnvironmentBillingSummary",
    "EnvironmentGetBudget", "EnvironmentGetManaged", "EnvironmentGetRoles", "EnvironmentList",
    "FunctionCallCount", "FunctionCallFromId", "FunctionCallGetInfo", "FunctionCallList", "FunctionGet",
    "FunctionGetById", "FunctionGetCallGraph", "FunctionGetCurrentStats", "FunctionGetDynamicConcurrency",
    "FunctionGetMetrics", "FunctionGetSchedulingParams", "FunctionGetTimeRangeStats", "FunctionListVariants",
    "ImageBuildChainGet", "ImageFromId", "ImageGetByTag", "ImageJoinStreaming", "ImageListTags",
    "ImageTagRevisions", "MetricsGetInfo", "MountBatchedCheckExistence", "ObjectSuggest", "ProxyGet",
    "ProxyList", "QueueGetById", "QueueLen", "QueueList", "QueueNextItems", "SandboxGetExitSnapshot",
    "SandboxGetExitSnapshotV2", "SandboxGetFromName", "SandboxGetFromNameV2", "SandboxGetLogs",
    "SandboxGetResourceUsage", "SandboxGetStats", "SandboxGetStatsV2", "SandboxGetTaskId",
    "SandboxGetTaskIdV2", "SandboxGetTimeRangeStats", "SandboxGetTunnels", "SandboxGetTunnelsV2",
    "SandboxList", "SandboxListV2", "SandboxSnapshotFsAsyncGet", "SandboxSnapshotGet", "SandboxTagsGet",
    "SandboxTagsGetV2", "SandboxWait", "SandboxWaitUntilReady", "SandboxWaitV2", "SecretGetInfo",
    "SecretList", "ServerCountRequests", "ServerGetMetrics", "ServerGetTimeRangeStats", "ServerRequestFetch",
    "ServiceUserInfo", "ServiceUserList", "SharedVolumeGetFile", "SharedVolumeList", "SharedVolumeListFiles",
    "SharedVolumeListFilesStream", "TaskGetInfo", "TaskList", "TemplateList", "TokenInfoGet", "TokensList",
    "VolumeGetById", "VolumeGetFile", "VolumeGetFile2", "VolumeList", "VolumeListFiles", "VolumeListFiles2",
    "WebhookTokenEnvironmentList", "WebhookTokenList", "WebhookTokenListForEnvironment",
    "WorkspaceBillingRates", "WorkspaceBillingReport", "WorkspaceBillingSummary", "WorkspaceDashboardUrlGet",
    "WorkspaceMembersList", "WorkspaceNameLookup", "WorkspaceSettings",
];

/// Where one method's request names environments and objects.
#[derive(Debug, Default)]
pub struct MethodFields {
    /// Field number of `environment_name`.
    pub environment: Option<u32>,
    /// Field number of `object_creation_type` (0 = look up only).
    pub creation_type: Option<u32>,
    /// Field numbers of top-level `*_id` strings, with their names.
    pub ids: Vec<(u32, String)>,
}

/// Every method of `modal.client.ModalClient` by name, with its request's fields.
pub struct Catalog {
    pub methods: HashMap<String, MethodFields>,
    /// Method name → fully qualified request message name (`modal.client.DictGetRequest`).
    pub input_types: HashMap<String, String>,
}

pub static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    let fds = prost_types::FileDescriptorSet::decode(ferry_proto::FILE_DESCRIPTOR_SET).expect("the embedded descriptors decode");
    let mut messages = HashMap::new();
    let mut service = None;
    for file in &fds.file {
        let package = file.package();
        for m in &file.message_type {
            messages.insert(format!(".{package}.{}", m.name()), m.clone());
        }
        for s in &file.service {
            if package == "modal.client" && s.name() == "ModalClient" {
                service = Some(s.clone());
            }
        }
    }
    let service = service.expect("the descriptors hold modal.client.ModalClient");
    let mut methods = HashMap::new();
    let mut input_types = HashMap::new();
    for m in &service.method {
        let mut fields = MethodFields::default();
        if let Some(msg) = messages.get(m.input_type()) {
            use prost_types::field_descriptor_proto::{Label, Type};
            for f in &msg.field {
                let repeated = f.label() == Label::Repeated;
                match (f.name(), f.r#type()) {
                    ("environment_name", Type::String) if !repeated => fields.environment = Some(f.number() as u32),
                    ("object_creation_type", Type::Enum) if !repeated => fields.creation_type = Some(f.number() as u32),
                    // The environment's own get-or-create names it as its deployment name.
                    ("deployment_name", Type::String) if m.name() == "EnvironmentGetOrCreate" => {
                        fields.environment = Some(f.number() as u32)
                    }
                    (name, Type::String) if !repeated && name.ends_with("_id") && name != "idempotency_key" => {
                        fields.ids.push((f.number() as u32, name.to_string()))
                    }
                    _ => {}
                }
            }
        }
        input_types.insert(m.name().to_string(), m.input_type().trim_start_matches('.').to_string());
        methods.insert(m.name().to_string(), fields);
    }
    Catalog { methods, input_types }
});

/// The top-level scalar fields of an encoded message that a scope check reads: the last value
/// of each field number (as protobuf merges them).
#[derive(Debug, Default)]
pub struct Scanned {
    pub strings: HashMap<u32, Vec<u8>>,
    pub varints: HashMap<u32, u64>,
}

/// Reads the top-level fields of an encoded protobuf message without knowing its type; `None`
/// for bytes that are not a well-formed message.
pub fn scan(mut buf: &[u8]) -> Option<Scanned> {
    let mut out = Scanned::default();
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).ok()?;
        let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
        if number == 0 {
            return None;
        }
        match wire {
            0 => {
                let v = prost::encoding::decode_varint(&mut buf).ok()?;
                out.varints.insert(number, v);
            }
            1 => buf = buf.get(8..)?,
            2 => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?;
                let value = buf.get(..len)?;
                out.strings.insert(number, value.to_vec());
                buf = &buf[len..];
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

/// Whether a read-only token may call `method` with this request.
pub fn allowed_read_only(method: &str, request: Option<&Scanned>) -> bool {
    if READ_ONLY_RPCS.contains(&method) {
        return true;
    }
    // `X.from_name(...)` is a `*GetOrCreate` whose creation type is left at 0: a lookup.
    if method.ends_with("GetOrCreate") {
        if let (Some(field), Some(req)) = (CATALOG.methods.get(method).and_then(|f| f.creation_type), request) {
            return req.varints.get(&field).copied().unwrap_or(0) == 0;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_knows_every_method_and_the_read_table_names_only_real_ones() {
        assert!(CATALOG.methods.len() > 250, "{}", CATALOG.methods.len());
        for m in READ_ONLY_RPCS {
            assert!(CATALOG.methods.contains_key(*m), "{m} is not an RPC of the pinned client");
        }
        let dict = &CATALOG.methods["DictGetOrCreate"];
        assert!(dict.environment.is_some() && dict.creation_type.is_some());
        assert!(CATALOG.methods["DictGet"].ids.iter().any(|(_, n)| n == "dict_id"));
    }

    #[test]
    fn writes_are_refused_and_lookups_allowed() {
        use ferry_proto::api;
        let lookup = api::DictGetOrCreateRequest { deployment_name: "d".into(), ..Default::default() }.encode_to_vec();
        assert!(allowed_read_only("DictGetOrCreate", scan(&lookup).as_ref()));
        let create = api::DictGetOrCreateRequest { deployment_name: "d".into(), object_creation_type: 1, ..Default::default() }.encode_to_vec();
        assert!(!allowed_read_only("DictGetOrCreate", scan(&create).as_ref()));
        assert!(!allowed_read_only("DictUpdate", None));
        assert!(!allowed_read_only("QueueGet", None));
        assert!(allowed_read_only("DictGet", None));
    }

    #[test]
    fn scan_refuses_malformed_bytes_and_reads_fields() {
        assert!(scan(&[0xff]).is_none());
        assert!(scan(&[0x0a, 0x05, b'a']).is_none());
        let s = scan(&[0x0a, 0x01, b'a', 0x10, 0x02]).unwrap();
        assert_eq!(s.strings[&1], b"a");
        assert_eq!(s.varints[&2], 2);
    }
}
