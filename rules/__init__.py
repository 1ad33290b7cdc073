"""STTran's protocol rules, as pure numpy functions both stages import: the task modes
(:mod:`rules.modes`), the two IoU conventions and NMS (:mod:`rules.boxes`), which boxes a
frame's pairs join and which boxes SGDET scores (:mod:`rules.pairing`). It imports only numpy."""
