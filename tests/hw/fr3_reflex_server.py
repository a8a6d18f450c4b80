"""franky-sim's server (MuJoCo, 127.0.0.1 only) with one thing franky-sim does not simulate: a contact reflex.

A real FR3 aborts the running motion when the measured contact force passes the collision threshold
(Robot.set_collision_behavior) and answers the motion's Move command with "reflex aborted"; libfranka then
raises a ControlException in the client, and automatic error recovery clears it. Here a contact between the
arm (or its hand) and the ground plane that pushes harder than `force_n` does the same, through the
server's own protocol code, once per contact (the arm must leave the ground before the next one).

Run: python -m tests.hw.fr3_reflex_server [force_n]   (prints franky-sim's ready line)
"""

from __future__ import annotations

import sys

import franky_sim
import mujoco
import numpy as np
from franky_sim.franka_robot_protocol import MoveStatus, RobotCommand
from franky_sim.franka_server import BaseCommand
from franky_sim.mujoco_simulator import MujocoSimulator

HOST = "127.0.0.1"


def ground_force(sim: MujocoSimulator, ground: int) -> float:
    """The total normal force (N) of the contacts on the ground plane."""
    total, wrench = 0.0, np.zeros(6)
    for i in range(sim.data.ncon):
        contact = sim.data.contact[i]
        if ground in (contact.geom1, contact.geom2):
            mujoco.mj_contactForce(sim.model, sim.data, i, wrench)
            total += abs(wrench[0])
    return total


def main() -> None:
    force_n = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    with MujocoSimulator(enable_visualization=False) as sim:
        robot = sim.add_robot()
        with franky_sim.SimulationServer(sim, hostname_candidates=[HOST]) as server:
            ground = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_GEOM, "ground")
            armed = [True]

            def reflex(_sim: MujocoSimulator) -> None:
                force = ground_force(sim, ground)
                if force == 0.0:
                    armed[0] = True
                    return
                rs = server.robot_servers[0]
                if force > force_n and armed[0] and rs.current_motion_id:
                    armed[0] = False
                    motion = rs.current_motion_id
                    rs.stop_motion(send_preemption_signal=False)
                    BaseCommand.send_response(rs._tcp_socket, RobotCommand.kMove, motion, MoveStatus.kReflexAborted)
                    rs.reset_current_motion_id()
                    print(f"reflex: contact force {force:.0f} N", flush=True)

            sim.register_post_step_callback(reflex)
            print(f"Connect to the server using '{robot.hostname}' as the robot IP address", flush=True)
            try:
                server.run_forever()
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
