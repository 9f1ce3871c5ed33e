-- `rotate` asks the operator for a new key; there is nothing to rotate before the first key
-- exists, nor on a key being deleted.
local actions = {}
actions["rotate"] = {
  ["disabled"] = obj.metadata.deletionTimestamp ~= nil or obj.status == nil or obj.status.publicKey == nil
}
return actions
