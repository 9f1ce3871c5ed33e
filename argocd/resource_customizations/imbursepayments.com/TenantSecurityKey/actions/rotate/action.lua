-- Stamps the request time: the operator rotates the key once for each new value of the
-- annotation (it records the last one handled), so running the action again rotates again.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["imbursepayments.com/rotate-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
