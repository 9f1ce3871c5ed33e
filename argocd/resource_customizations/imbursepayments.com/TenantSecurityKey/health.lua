-- Health of tenant-key-operator's resources (TenantSecurityKey, ImburseAccount and
-- ClusterImburseAccount share this script) from the kstatus conditions the operator writes:
-- Ready, Reconciling (a transient failure, retried) and Stalled (a permanent one, waiting for a
-- change), each with the failure's reason and message.
local hs = {}

-- Reasons of failures that retrying cannot fix (the operator's Reason::is_permanent). A Stalled
-- condition says so too; the list also judges a Ready=False written without one.
local permanent = {
  InvalidSpec = true,
  AccountNotFound = true,
  NamespaceNotAllowed = true,
  TenantNotAllowed = true,
  RolesNotAllowed = true,
  BaseUrlNotAllowed = true,
  CredentialsSecretNotFound = true,
  CredentialsInvalid = true,
  Forbidden = true,
  TenantNotFound = true,
  ImburseRejected = true,
  SecretConflict = true,
  AdoptionRefused = true,
  SecretRejected = true,
  ListingUnsupported = true,
  KeyNotRevoked = true,
  RotationLimited = true,
}

local function describe(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return condition.reason or ""
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

-- Conditions of an older generation describe a spec that no longer exists.
local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    conditions[condition.type] = condition
  end
end

local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

if ready ~= nil and ready.status == "False" then
  if permanent[ready.reason] then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the operator"
return hs
