-- Argo CD health of a Stockade ContainerPolicy or ClusterContainerPolicy (Lua 5.1).
-- Reads what the operator writes (docs/operator.md, "Status"): observedGeneration, and the
-- Ready, Reconciling and Stalled conditions with Ready's reason and message.
--   Stalled=True (Invalid, BundleTooLarge, SensorSilent, NodeErrors)   -> Degraded
--   Reconciling=True (Applying, Compiling, WriteFailed), no status yet,
--   a generation not yet observed                                      -> Progressing
--   Ready=True (Applied, NoTargets)                                    -> Healthy
local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Stockade operator to write a status"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Stockade operator to compile generation " .. tostring(generation)
  return hs
end
local found = {}
for _, condition in ipairs(status.conditions) do
  found[condition.type] = condition
end
local function said(condition)
  return (condition.reason or "") .. ": " .. (condition.message or "")
end
if found.Stalled ~= nil and found.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(found.Stalled)
elseif found.Reconciling ~= nil and found.Reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = said(found.Reconciling)
elseif found.Ready ~= nil and found.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(found.Ready)
elseif found.Ready ~= nil then
  hs.status = "Degraded"
  hs.message = said(found.Ready)
else
  hs.status = "Progressing"
  hs.message = "Waiting for the Stockade operator's Ready condition"
end
return hs
