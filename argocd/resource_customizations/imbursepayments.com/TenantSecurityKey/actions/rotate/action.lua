-- Stamps the request time: the operator rotates a key whose request is newer than the key, so
-- running the action again later rotates again.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["imbursepayments.com/rotate-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
