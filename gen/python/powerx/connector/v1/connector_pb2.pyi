import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CredentialKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREDENTIAL_KIND_UNSPECIFIED: _ClassVar[CredentialKind]
    CREDENTIAL_KIND_API_KEY: _ClassVar[CredentialKind]
    CREDENTIAL_KIND_OAUTH: _ClassVar[CredentialKind]
    CREDENTIAL_KIND_COZE_JWT: _ClassVar[CredentialKind]

class CredentialStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREDENTIAL_STATUS_UNSPECIFIED: _ClassVar[CredentialStatus]
    CREDENTIAL_STATUS_ACTIVE: _ClassVar[CredentialStatus]
    CREDENTIAL_STATUS_EXPIRING: _ClassVar[CredentialStatus]
    CREDENTIAL_STATUS_EXPIRED: _ClassVar[CredentialStatus]
    CREDENTIAL_STATUS_REFRESH_FAILED: _ClassVar[CredentialStatus]
    CREDENTIAL_STATUS_REJECTED: _ClassVar[CredentialStatus]

class ConfigChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFIG_CHANGE_TYPE_UNSPECIFIED: _ClassVar[ConfigChangeType]
    CONFIG_CHANGE_TYPE_CREATE: _ClassVar[ConfigChangeType]
    CONFIG_CHANGE_TYPE_UPDATE: _ClassVar[ConfigChangeType]
    CONFIG_CHANGE_TYPE_ROTATE_CREDENTIAL: _ClassVar[ConfigChangeType]
    CONFIG_CHANGE_TYPE_ROLLBACK: _ClassVar[ConfigChangeType]
CREDENTIAL_KIND_UNSPECIFIED: CredentialKind
CREDENTIAL_KIND_API_KEY: CredentialKind
CREDENTIAL_KIND_OAUTH: CredentialKind
CREDENTIAL_KIND_COZE_JWT: CredentialKind
CREDENTIAL_STATUS_UNSPECIFIED: CredentialStatus
CREDENTIAL_STATUS_ACTIVE: CredentialStatus
CREDENTIAL_STATUS_EXPIRING: CredentialStatus
CREDENTIAL_STATUS_EXPIRED: CredentialStatus
CREDENTIAL_STATUS_REFRESH_FAILED: CredentialStatus
CREDENTIAL_STATUS_REJECTED: CredentialStatus
CONFIG_CHANGE_TYPE_UNSPECIFIED: ConfigChangeType
CONFIG_CHANGE_TYPE_CREATE: ConfigChangeType
CONFIG_CHANGE_TYPE_UPDATE: ConfigChangeType
CONFIG_CHANGE_TYPE_ROTATE_CREDENTIAL: ConfigChangeType
CONFIG_CHANGE_TYPE_ROLLBACK: ConfigChangeType

class ConnectorInstance(_message.Message):
    __slots__ = ("instance_id", "tenant_id", "platform", "display_name", "description", "base_url", "workflow_ids", "platform_account_id", "default_platform_user_id", "user_mappings", "input_template", "output_template", "required_context_fields", "sensitive_fields", "callback_url", "rate_limit", "retry_policy", "timeout", "allow_previous_credential", "secret_ref", "credential", "credential_input", "webhook_tolerance", "enabled", "local_capability_id", "config_version", "labels", "create_time", "update_time")
    class WorkflowIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_IDS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PLATFORM_USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CONTEXT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    SENSITIVE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PREVIOUS_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    SECRET_REF_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_INPUT_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CAPABILITY_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    tenant_id: str
    platform: str
    display_name: str
    description: str
    base_url: str
    workflow_ids: _containers.ScalarMap[str, str]
    platform_account_id: str
    default_platform_user_id: str
    user_mappings: _containers.RepeatedCompositeFieldContainer[UserMapping]
    input_template: _struct_pb2.Struct
    output_template: _struct_pb2.Struct
    required_context_fields: _containers.RepeatedScalarFieldContainer[str]
    sensitive_fields: _containers.RepeatedScalarFieldContainer[str]
    callback_url: str
    rate_limit: RateLimit
    retry_policy: RetryPolicy
    timeout: _duration_pb2.Duration
    allow_previous_credential: bool
    secret_ref: str
    credential: CredentialInfo
    credential_input: CredentialInput
    webhook_tolerance: _duration_pb2.Duration
    enabled: bool
    local_capability_id: str
    config_version: int
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, instance_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., platform: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., base_url: _Optional[str] = ..., workflow_ids: _Optional[_Mapping[str, str]] = ..., platform_account_id: _Optional[str] = ..., default_platform_user_id: _Optional[str] = ..., user_mappings: _Optional[_Iterable[_Union[UserMapping, _Mapping]]] = ..., input_template: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output_template: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., required_context_fields: _Optional[_Iterable[str]] = ..., sensitive_fields: _Optional[_Iterable[str]] = ..., callback_url: _Optional[str] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ..., retry_policy: _Optional[_Union[RetryPolicy, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., allow_previous_credential: _Optional[bool] = ..., secret_ref: _Optional[str] = ..., credential: _Optional[_Union[CredentialInfo, _Mapping]] = ..., credential_input: _Optional[_Union[CredentialInput, _Mapping]] = ..., webhook_tolerance: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., enabled: _Optional[bool] = ..., local_capability_id: _Optional[str] = ..., config_version: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UserMapping(_message.Message):
    __slots__ = ("user_id", "platform_user_id", "workflow_aliases")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_USER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ALIASES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    platform_user_id: str
    workflow_aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., platform_user_id: _Optional[str] = ..., workflow_aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("requests_per_second", "burst")
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    requests_per_second: float
    burst: int
    def __init__(self, requests_per_second: _Optional[float] = ..., burst: _Optional[int] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_attempts", "initial_backoff", "max_backoff", "backoff_multiplier")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    initial_backoff: _duration_pb2.Duration
    max_backoff: _duration_pb2.Duration
    backoff_multiplier: float
    def __init__(self, max_attempts: _Optional[int] = ..., initial_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff_multiplier: _Optional[float] = ...) -> None: ...

class CredentialInfo(_message.Message):
    __slots__ = ("secret_ref", "kind", "version", "key_id", "expire_time", "status", "rotate_time", "next_refresh_time", "previous_version", "has_refresh_token", "webhook_secret_count", "status_message")
    SECRET_REF_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROTATE_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_REFRESH_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    HAS_REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_SECRET_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    secret_ref: str
    kind: CredentialKind
    version: int
    key_id: str
    expire_time: _timestamp_pb2.Timestamp
    status: CredentialStatus
    rotate_time: _timestamp_pb2.Timestamp
    next_refresh_time: _timestamp_pb2.Timestamp
    previous_version: int
    has_refresh_token: bool
    webhook_secret_count: int
    status_message: str
    def __init__(self, secret_ref: _Optional[str] = ..., kind: _Optional[_Union[CredentialKind, str]] = ..., version: _Optional[int] = ..., key_id: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[CredentialStatus, str]] = ..., rotate_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_refresh_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_version: _Optional[int] = ..., has_refresh_token: _Optional[bool] = ..., webhook_secret_count: _Optional[int] = ..., status_message: _Optional[str] = ...) -> None: ...

class CredentialInput(_message.Message):
    __slots__ = ("api_key", "oauth", "coze_jwt", "webhook_secrets", "secret_headers", "coze_verify_token")
    class SecretHeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    OAUTH_FIELD_NUMBER: _ClassVar[int]
    COZE_JWT_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_SECRETS_FIELD_NUMBER: _ClassVar[int]
    SECRET_HEADERS_FIELD_NUMBER: _ClassVar[int]
    COZE_VERIFY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKeyCredential
    oauth: OAuthCredential
    coze_jwt: CozeJwtCredential
    webhook_secrets: _containers.RepeatedScalarFieldContainer[str]
    secret_headers: _containers.ScalarMap[str, str]
    coze_verify_token: str
    def __init__(self, api_key: _Optional[_Union[ApiKeyCredential, _Mapping]] = ..., oauth: _Optional[_Union[OAuthCredential, _Mapping]] = ..., coze_jwt: _Optional[_Union[CozeJwtCredential, _Mapping]] = ..., webhook_secrets: _Optional[_Iterable[str]] = ..., secret_headers: _Optional[_Mapping[str, str]] = ..., coze_verify_token: _Optional[str] = ...) -> None: ...

class ApiKeyCredential(_message.Message):
    __slots__ = ("token", "expire_time")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    token: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OAuthCredential(_message.Message):
    __slots__ = ("access_token", "refresh_token", "expire_time", "token_url", "client_id", "client_secret", "scopes")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_URL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    refresh_token: str
    expire_time: _timestamp_pb2.Timestamp
    token_url: str
    client_id: str
    client_secret: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, access_token: _Optional[str] = ..., refresh_token: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., token_url: _Optional[str] = ..., client_id: _Optional[str] = ..., client_secret: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class CozeJwtCredential(_message.Message):
    __slots__ = ("app_id", "public_key_id", "private_key_pem", "token_ttl")
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TTL_FIELD_NUMBER: _ClassVar[int]
    app_id: str
    public_key_id: str
    private_key_pem: str
    token_ttl: _duration_pb2.Duration
    def __init__(self, app_id: _Optional[str] = ..., public_key_id: _Optional[str] = ..., private_key_pem: _Optional[str] = ..., token_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ConfigVersion(_message.Message):
    __slots__ = ("instance_id", "version", "change_type", "instance", "credential_version", "changed_fields", "rollback_of_version", "actor", "reason", "create_time")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    version: int
    change_type: ConfigChangeType
    instance: ConnectorInstance
    credential_version: int
    changed_fields: _field_mask_pb2.FieldMask
    rollback_of_version: int
    actor: str
    reason: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, instance_id: _Optional[str] = ..., version: _Optional[int] = ..., change_type: _Optional[_Union[ConfigChangeType, str]] = ..., instance: _Optional[_Union[ConnectorInstance, _Mapping]] = ..., credential_version: _Optional[int] = ..., changed_fields: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., rollback_of_version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PlatformWorkflow(_message.Message):
    __slots__ = ("workflow_id", "name", "active", "webhook_paths", "aliases", "tags", "update_time")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_PATHS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    name: str
    active: bool
    webhook_paths: _containers.RepeatedScalarFieldContainer[str]
    aliases: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, workflow_id: _Optional[str] = ..., name: _Optional[str] = ..., active: _Optional[bool] = ..., webhook_paths: _Optional[_Iterable[str]] = ..., aliases: _Optional[_Iterable[str]] = ..., tags: _Optional[_Iterable[str]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
